"""Memory pre-flight (``mmllava plan``): predicted peak memory per GPU of a config, before renting one.

``planner.make_plan`` / ``planner.predict_peak`` are the entry points; ``measure`` counts what a real
step holds, for the tests that check the prediction.
"""
