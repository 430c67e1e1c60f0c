"""Shared machinery of the test matrix: case tables, input builders, the tolerance rule, the
pluggable implementation adapter and the device/interpreter setup. Test files only wire these."""
