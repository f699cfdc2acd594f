# Doctest collection imports every module of the package; `python -m surrogate` exits on import.
collect_ignore = ["surrogate/__main__.py"]
