"""`phonebridge inspect`: one recorded call as a self-contained HTML page."""
