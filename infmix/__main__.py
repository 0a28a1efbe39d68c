from infmix.cli import main

main()
