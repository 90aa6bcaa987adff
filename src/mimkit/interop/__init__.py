"""Weights in and out of Hugging Face transformers, timm and the official MAE format.

One module per format holds its name table (`hf`, `timm`, `official_mae`); `safe_load` reads
foreign files without trusting pickles; `convert` detects formats and drives `mimkit import`
(`import_checkpoint`) and `mimkit export` (`export_checkpoint`). Nothing is imported here, so
`mimkit --help` stays fast.
"""
