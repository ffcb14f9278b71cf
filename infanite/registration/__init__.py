"""Slice-to-template registration: orientation search, rigid NMI, observed-voxel maps, QC."""
