"""Operations behind the metrics: one module per op, each with a plain-torch reference and the
fast backends registered in :mod:`platonic_fast._backends`."""
