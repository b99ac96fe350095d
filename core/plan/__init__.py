"""Planning: a per-layer sensitivity atlas and the budget planner that reads it.

* ``menu``     - ``Option``, ``Menu`` (what each layer may take) and ``Budget`` (what a plan must keep).
* ``sizes``    - exact bytes and non-zeros of every option, as the artifact stores them.
* ``proxy``    - pure: the second-order cost sum_ij H_jj (W - W')_ij^2 of one rounded or pruned matrix.
* ``knapsack`` - pure: the multiple-choice knapsack, solved exactly by dynamic programming.
* ``atlas``    - the cost of every option on every layer, measured (KL, delta NLL) or by the proxy.
* ``cache``    - atlases kept under the results folder, by (model, calibration, menu, mode).
* ``planner``  - budget -> one option per layer -> the step's parameters, with the predicted size and perplexity.

The namespace imports nothing, so the quantize and prune specs can read ``menu`` without a cycle.
"""
