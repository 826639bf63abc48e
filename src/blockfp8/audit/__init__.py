"""The UE8M0 audit: what power-of-two (UE8M0) block scales cost compared with float32 scales, layer by layer, and a
verdict the accuracy guard can act on.

Levels: checkpoint (``plan`` picks the tensors, ``reading`` reads and audits them with ``numerics``, ``speed``
compares with merely reading), weights-only (``weights``), calibrated (``calibrated``, on ``text``) and end to end
(``e2e``); ``measures`` holds the bits and scale-inflation measures they share. ``run`` assembles a level into an
``report.AuditReport``, ``verdict`` judges it, ``render`` prints it, ``emit`` turns it into serving settings.
CPU-only by design: never imports ``blockfp8.nn`` or a GPU backend (docs/audit.md)."""
