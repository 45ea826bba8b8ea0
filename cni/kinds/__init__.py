"""Link types the plugin attaches, one module each with ``add``, ``delete`` and ``check``."""
