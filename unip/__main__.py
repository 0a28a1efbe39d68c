from unip.cli import main

main()
