from infanite.cli.main import main

raise SystemExit(main())
