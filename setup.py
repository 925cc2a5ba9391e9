from setuptools import find_packages, setup

setup(
    name="cohort_pipeline",
    version="0.1.0",
    description="Differentially private cohort metrics and ranking weights as a Dagster code location",
    packages=find_packages(exclude=["cohort_pipeline_tests", "benchmarks"]),
    python_requires=">=3.11",
    install_requires=[
        # Versions the project is tested against (see design §5 for why each is pinned).
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "pandas>=3.0,<3.2",
        "opendp==0.16.0",
        "dp-accounting==0.6.0",
        "duckdb==2.0.1",
        "pyarrow>=20",
        "pyyaml>=6",
        "matplotlib>=3.9",
    ],
    extras_require={
        "dev": ["pytest>=8", "hypothesis>=6.100", "ruff==0.17.6", "playwright>=1.50"],
        # COHORT_PIPELINE_ENGINE=spark (needs Java 17+), through Dagster's PySpark integration
        # (whose newest release pins dagster 1.13.27, hence the pin above); sqlglot translates
        # the bounding SQL.
        "spark": ["pyspark>=4.0,<5", "dagster-pyspark==0.29.27", "sqlglot>=30.30,<31"],
        # benchmarks/ only; the peer DP libraries get their own venvs there (design §5).
        "benchmarks": ["psutil>=5.9"],
    },
    entry_points={"console_scripts": ["cohort-pipeline=cohort_pipeline.tools.cli:main"]},
)
