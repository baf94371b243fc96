"""rayjupyter.train.tensorflow: TensorflowTrainer, which sets ``TF_CONFIG`` on every
worker for ``tf.distribute.MultiWorkerMirroredStrategy``; tensorflow is imported only by
the user's loop."""

from rayjupyter.train.tensorflow.config import TensorflowConfig, TensorflowTrainer

__all__ = ["TensorflowConfig", "TensorflowTrainer"]
