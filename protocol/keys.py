"""Every name the ServerApp and the ClientApp exchange: record names, config keys, node-config
keys and metric keys. Both apps spell a name only through these constants (no literals).

Importing this module imports nothing (task/ may read the node-config keys too).
"""

from __future__ import annotations

# -- record names of a message's content ---------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: the shared tensors only (server <-> client)
CONFIG = "config"  # ConfigRecord: server -> client
METRICS = "metrics"  # MetricRecord: client -> server (a train or an evaluate reply)
# Fused evaluation (server.eval-mode=fused): a train message whose config holds EVALUATE_ROUND
# = r (>= 1) asks the client to evaluate the model it carries (round r's aggregate, with the
# private prompt saved at the end of round r) before training; the evaluation goes back in the
# train reply's EVAL_METRICS record, with the keys of an evaluate reply's METRICS.
EVAL_METRICS = "eval-metrics"

# -- config keys (server -> client) --------------------------------------------------------
SERVER_ROUND = "server-round"  # set by Flower's FedAvg.configure_train / configure_evaluate
EXPERIMENT = "experiment"  # the run's experiment id: names the client's private store
EVALUATE_ROUND = "evaluate-round"
ZEROSHOT = "zeroshot"  # also report the frozen zero-shot accuracy (first evaluation of a run)
APP_DIGEST = "app-digest"  # the server's protocol.appcode.app_digest: the client must match it

# -- node-config keys (the SuperNode's own settings) ---------------------------------------
PARTITION_ID = "partition-id"  # also a metric key: every reply says which partition it is
NUM_PARTITIONS = "num-partitions"
DATA_ROOT = "data-root"  # the node's own images (its whole partition with data.partitioner=local)

# -- metric keys (client -> server) --------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # weights the average; train: epochs x train split; eval: test
TRAIN_LOSS = "train-loss"
STEPS = "steps"
TRAIN_PART_PREFIX = "train-"  # train-<part>: the mean of each loss part (train-ce, train-ot, ...)
PERSONALISED_ACCURACY = "personalised-accuracy"
PERSONALISED_LOSS = "personalised-loss"
GLOBAL_ACCURACY = "global-accuracy"
GLOBAL_LOSS = "global-loss"
GLOBAL_NUM_EXAMPLES = "global-num-examples"
PRIVATE_ROUND = "private-round"  # the private prompt's round (-1: none yet)
ZEROSHOT_ACCURACY = "zeroshot-accuracy"
TIME_PREFIX = "time-"  # time-<stage>: seconds this reply spent in a stage
AT_PREFIX = "at-"  # at-<event>: wall-clock marks of the ClientApp process (client_app.timeline)
