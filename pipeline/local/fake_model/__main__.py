"""`python -m legato.local.fake_model --port 0 --script f.yaml`."""

from legato.local.fake_model.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
