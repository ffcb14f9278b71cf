"""MRML-level logic of the INFANiTERegistration module (no Qt): inputs → manifest, the background registration
command, and the review session (stack under its transform over the template, manual correction, refinement,
acceptance)."""
from .inputs import StackEntry, StackInput, manifest_from_nodes, new_mask_segmentation, registration_command
from .review import RegistrationReview, ReviewRow
from .views import centre_slice_views, set_foreground_opacity, set_transform_handles, show_in_slice_views

__all__ = ["StackEntry", "StackInput", "manifest_from_nodes", "new_mask_segmentation", "registration_command",
           "RegistrationReview", "ReviewRow", "centre_slice_views", "set_foreground_opacity", "set_transform_handles",
           "show_in_slice_views"]
