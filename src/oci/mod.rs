//! TODO(oci): module being written.
