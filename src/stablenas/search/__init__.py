"""The one search loop and what a method sees of it.

``loop.Search`` runs every method: per step an alpha update (``alpha``: first order, DARTS's unrolled
second order, the methods' penalties) and a weight update, at each epoch end the record, the derived
cell (``discretize``) and a checkpoint (``state``); ``readout`` holds what the loop reads off the
supernet without training it. The run lifecycle (run directory, signals, resume) comes from
``stablenas.runs.lifecycle``. ``operations`` are the changes a method may ask of the loop; the methods'
view of it is ``stablenas.methods.context.SearchContext``.
"""
