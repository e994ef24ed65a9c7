from mnist_trainer.cli import main

main()
