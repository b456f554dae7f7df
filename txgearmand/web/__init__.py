"""
What txgearmand serves over HTTP: the status site (L{txgearmand.web.site}).
"""
