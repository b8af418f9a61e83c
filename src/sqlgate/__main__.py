from sqlgate.cli import main

main()
