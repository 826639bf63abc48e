from blockfp8.cli.main import main

raise SystemExit(main())
