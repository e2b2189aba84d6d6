# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"Sphinx configuration of the Marketing Automation module documentation"

project = "Marketing Automation"
copyright = "marketing_automation contributors"
author = "marketing_automation contributors"
version = '8.0'
release = '8.0.0'

# No extension: the documentation builds offline
extensions = []
master_doc = 'index'
source_suffix = {'.rst': 'restructuredtext'}
exclude_patterns = ['_build']
language = 'en'
pygments_style = 'sphinx'

html_theme = 'alabaster'
html_static_path = []
