"""Evaluation beyond the service's own report sections: altered photos and another shop's photos."""
