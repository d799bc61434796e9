"""Every loss of sslfast.losses as a plain function."""
