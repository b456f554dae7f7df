"""
Packaging for txgearmand.
"""

from pathlib import Path

from setuptools import setup

setup(
    name="txgearmand",
    version="0.1.0",
    description="A Gearman job server on Twisted, usable with twistd or embedded.",
    long_description=Path(__file__).with_name("README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.9",
    packages=[
        "txgearmand",
        "txgearmand.store",
        "txgearmand.test",
        "txgearmand.web",
        "twisted.plugins",
    ],
    package_data={"txgearmand": ["py.typed"], "txgearmand.web": ["static/*"]},
    install_requires=[
        "Twisted>=23.10",
        "zope.interface>=5",
        "attrs>=22.2",
    ],
    extras_require={
        "tls": ["Twisted[tls]"],
        # psycopg 3 (libpq) where it runs; pg8000 (pure Python) on PyPy.
        "postgresql": [
            "psycopg[binary]>=3.1; platform_python_implementation == 'CPython'",
            "pg8000>=1.30; platform_python_implementation != 'CPython'",
        ],
        # Prometheus metrics (--metrics, and /metrics on the --web site).
        "metrics": ["prometheus-client>=0.17"],
        "test": [
            "prometheus-client>=0.17",
            "Twisted[tls]; platform_python_implementation == 'CPython'",
            "psycopg[binary]>=3.1; platform_python_implementation == 'CPython'",
            # Both drivers' tests run on CPython; on PyPy, pg8000's.
            "pg8000>=1.30",
            "hypothesis>=6.50",
            "gear>=0.16",
            "coverage>=7",
            "pydoctor>=25.10; platform_python_implementation == 'CPython'",
            # The status page in a real Chromium (Debian's chromium, chromium-driver).
            "selenium>=4.11",
        ],
        # The API reference: python -m pydoctor (settings in pyproject.toml).
        "docs": ["pydoctor>=25.10"],
        "dev": [
            "Twisted[tls]",
            "prometheus-client>=0.17",
            "psycopg[binary]>=3.1; platform_python_implementation == 'CPython'",
            "pg8000>=1.30",
            "hypothesis>=6.50",
            "gear>=0.16",
            "coverage>=7",
            "mypy>=1.10",
            "mypy-zope>=1.0.5",
            "ruff>=0.5",
            "pydoctor>=25.10",
            "selenium>=4.11",
            "atheris; platform_python_implementation == 'CPython'",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: Implementation :: CPython",
        "Programming Language :: Python :: Implementation :: PyPy",
        "Topic :: System :: Distributed Computing",
    ],
)
