"""Beyond one machine: Ray clusters that evaluate whole data sets (``eval --cluster``) and benchmark a fleet of boards
(``fleet``). Above ``evaluate/`` and ``deploy/``, importing only downward; Ray itself is imported inside functions."""
