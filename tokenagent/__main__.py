from tokenagent.cli import main

main()
