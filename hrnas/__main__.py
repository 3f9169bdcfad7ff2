from hrnas.cli import main

raise SystemExit(main())
