from unionfs.cli import main

raise SystemExit(main())
