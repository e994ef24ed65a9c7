"""The stack's additions to the MLflow tracking server, loaded through MLflow's `mlflow.app` plugin hook."""
