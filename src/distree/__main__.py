from distree.cli.main import main

raise SystemExit(main())
