"""One module per study (notebook): results, gates, tables and plots."""
