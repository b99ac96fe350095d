"""Planning: a per-layer sensitivity atlas and the budget planner that reads it.

* ``menu``     - ``Option``, ``Menu`` (what each layer may take) and ``Budget`` (what a plan must keep).
* ``sizes``    - exact bytes and non-zeros of every option, as the artifact stores them.
* ``compress`` - pure: one layer's weight under one option, as its step computes it.
* ``proxy``    - pure: a layer's output error, weighted by the loss's gradient on each output channel.
* ``knapsack`` - pure: the multiple-choice knapsack, solved exactly by dynamic programming.
* ``build``    - the atlas walk: every option of every layer, scored with only that layer changed.
* ``atlas``    - ``Atlas``: the costs, the uniform choices' delta NLL and the fit that predicts perplexity.
* ``cache``    - atlases kept under the results folder, by (model, calibration, menu).
* ``request``  - ``AtlasRequest`` and ``atlas_for``: the cached atlas, or a new one.
* ``planner``  - budget -> one option per layer -> the step's parameters, with the predicted size and perplexity.

The namespace imports nothing, so the quantize and prune specs can read ``menu`` without a cycle.
"""
