"""Deployment: the deploy artifact (a decomposed model with its preprocessing, one file).

    from src.deploy import load_deploy
    net = load_deploy("deploy.pt")         # DeployedModel: .model, .preprocess, .predict, .classify
    print(net.classify("image.png"))

See src/deploy/artifact.py for the file format. The deployment tuning (src/deploy/tuning.py): the
deploy plan ``plan_recompose`` (per layer the fastest exact form, src/deploy/forms.py, measured
on the backend that will run the model: eager PyTorch, torch.compile or ONNX Runtime,
src/deploy/runtimes.py), the timer, and the CPU-tuned sum-pool policy, which importing this
package installs into src.structured. Importing this package imports torch and src.structured only.
"""

from .artifact import FORMAT, VERSION, DeployedModel, default_preprocessing, load_deploy, save_deploy
from .forms import LayerForm, decompose_planned, layer_forms, plan_summary, rewrite_layer
from .tuning import CPU_SUM_POOL_POLICY, PLAN_BACKENDS, PLAN_FORMS, CpuSumPoolPolicy, plan_recompose, time_interleaved

__all__ = ["FORMAT", "VERSION", "DeployedModel", "default_preprocessing", "load_deploy", "save_deploy",
           "plan_recompose", "PLAN_FORMS", "PLAN_BACKENDS", "time_interleaved", "CpuSumPoolPolicy",
           "CPU_SUM_POOL_POLICY", "LayerForm", "decompose_planned", "layer_forms", "rewrite_layer", "plan_summary"]
