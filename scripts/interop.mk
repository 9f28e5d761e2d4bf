interop: .venv/.installed
	bash scripts/install_interop.sh
	.venv/bin/python -m pytest -m interop tests/interop -q
