"""Deployment: the deploy artifact (a decomposed model with its preprocessing, one file).

    from src.deploy import load_deploy
    net = load_deploy("deploy.pt")         # DeployedModel: .model, .preprocess, .predict, .classify
    print(net.classify("image.png"))

See src/deploy/artifact.py for the file format. The deployment tuning (src/deploy/tuning.py): the
deploy plan ``plan_recompose`` (per layer the fastest exact form, src/deploy/forms.py, measured
on the backend that will run the model: eager PyTorch, torch.compile or ONNX Runtime,
src/deploy/runtimes.py) and the timer. Importing this package imports torch and src.structured
only, and changes nothing in them (the CPU-fast sum-pool forms are the core's default).
"""

from .artifact import FORMAT, VERSION, DeployedModel, default_preprocessing, load_deploy, save_deploy
from .forms import LayerForm, decompose_planned, layer_forms, plan_summary, rewrite_layer
from .tuning import PLAN_BACKENDS, PLAN_FORMS, plan_recompose, time_interleaved

__all__ = ["FORMAT", "VERSION", "DeployedModel", "default_preprocessing", "load_deploy", "save_deploy",
           "plan_recompose", "PLAN_FORMS", "PLAN_BACKENDS", "time_interleaved", "LayerForm", "decompose_planned", "layer_forms", "rewrite_layer", "plan_summary"]
