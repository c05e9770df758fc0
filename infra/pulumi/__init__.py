"""Sovra's Pulumi programs: one guarded component per placement kind, the inline program builder, and the
residency guard. Importing this package imports no Pulumi or cloud SDK; the modules that need them do."""
