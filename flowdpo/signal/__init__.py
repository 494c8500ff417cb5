"""`flowdpo signal`: before training, do a run's DPO pairs carry a learnable signal? `check` mines pairs once
and fits offline DPO per adapter and learning rate; `render` writes the markdown and the figure."""
