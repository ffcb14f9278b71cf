"""Reference anatomy: template libraries and their download, the phantom, normative volumes."""
