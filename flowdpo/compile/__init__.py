"""Compile and evaluate (paper Sec. "compile", Table 1): after online Flow-DPO training,

1. `traces`: the trained flow answers a compile set; its correct traces are kept, next to two baselines on
   the SAME questions and with the SAME number of kept traces: the dataset's ground-truth solutions and the
   base model's own correct answers (rejection sampling) - the equal-data rule (`select_equal_data`);
2. `sft`: one LoRA model is SFT-trained per trace source, with identical hyperparameters and system prompt;
3. `eval`: the base model 0-shot and each SFT model answer evaluation sets that share no question with the
   training or compile questions (checked in code); accuracy with a 95% Wilson interval and n.

`flowdpo compile RUN.yaml` runs 1 and 2, `flowdpo eval RUN.yaml` runs 3. Everything is read from and written
to the run's storage (keys in `flowdpo.storage.layout.RunLayout`: compile/, eval/). Heavy libraries are
imported inside the functions that need them, so `import flowdpo.compile` stays cheap.
"""
