"""The UE8M0 audit: what power-of-two (UE8M0) block scales cost compared with float32 scales, layer by layer, and a
verdict the accuracy guard can act on. Levels: checkpoint (``checkpoint``), weights-only (``weights``), calibrated
(``calibrated``) and end to end (``e2e``); ``run`` assembles reports, ``verdict`` judges them, ``report`` writes
them. CPU-only by design: never imports ``blockfp8.nn`` or a GPU backend (docs/audit.md)."""
