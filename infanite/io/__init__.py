"""Image and file formats: NIfTI/SimpleITK IO, resampling, figures, the cohort manifest, transforms."""
