from fedleak.cli import main

main()
