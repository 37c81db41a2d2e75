"""Deployment: the deploy artifact (a decomposed model with its preprocessing, one file).

    from src.deploy import load_deploy
    net = load_deploy("deploy.pt")         # DeployedModel: .model, .preprocess, .predict, .classify
    print(net.classify("image.png"))

See src/deploy/artifact.py for the file format. Importing this package imports torch only.
"""

from .artifact import FORMAT, VERSION, DeployedModel, default_preprocessing, load_deploy, save_deploy

__all__ = ["FORMAT", "VERSION", "DeployedModel", "default_preprocessing", "load_deploy", "save_deploy"]
