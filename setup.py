"""Package build: metadata from settings.ini (the classic nbdev template)."""
from configparser import ConfigParser

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

licenses = {"apache2": "Apache-2.0"}  # SPDX expressions
statuses = ["Planning", "Pre-Alpha", "Alpha", "Beta", "Production/Stable", "Mature", "Inactive"]
requirements = cfg["requirements"].split()
lab = cfg["lab_requirements"].split()
dev = cfg["dev_requirements"].split()
bench = cfg["bench_requirements"].split()

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=licenses[cfg["license"]],
    classifiers=[
        f"Development Status :: {cfg['status']} - {statuses[int(cfg['status'])]}",
        f"Intended Audience :: {cfg['audience']}",
        f"Natural Language :: {cfg['language']}",
        "Programming Language :: Python :: 3",
    ],
    keywords=cfg["keywords"].split(),
    url=f"https://github.com/{cfg['user']}/{cfg['repo']}",
    python_requires=f">={cfg['min_python']}",
    # data_cards/ and nbs/experiments/ ship inside the package (synthseg.data_cards, synthseg.experiments) so that
    # code reads the cards' front matter and `synthseg run` finds the experiment notebooks in any install.
    packages=setuptools.find_packages(include=["synthseg", "synthseg.*"]) + ["synthseg.data_cards", "synthseg.experiments"],
    package_dir={"synthseg.data_cards": "data_cards", "synthseg.experiments": "nbs/experiments"},
    package_data={"synthseg.data_cards": ["*.md"], "synthseg.experiments": ["*.ipynb"]},
    include_package_data=True,
    install_requires=requirements,
    extras_require={"lab": lab, "dev": dev, "bench": bench, "all": dev + lab + bench},
    entry_points={"console_scripts": cfg["console_scripts"].split(), "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
