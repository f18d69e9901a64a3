"""Deploy targets as data (recipes in ``export/``, boards and rules in ``hw/rules``), their steps, and the one export.

See :mod:`.registry` (what a target is), :mod:`.steps` (the step runner) and :mod:`.export` (one export,
any target).
"""
