"""Data only: the Omniglot minimal sets (``images_background_small1/2.zip``, MIT; LICENSE
here) that distmeta ships, so the ``minimal`` preset trains without a download."""
