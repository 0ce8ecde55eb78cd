"""The runtime must caption where torch, transformers and optimum cannot even be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "optimum", "onnx"):
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def test_caption_without_torch(export_tiny, sample_images, tmp_path):
    from PIL import Image

    ckpt, bundle = export_tiny("vit", "gpt2")  # exporting needs torch: done in this process
    Image.fromarray(sample_images[0]).save(tmp_path / "a.png")
    script = BLOCKER + textwrap.dedent(
        f"""
        import json
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the import blocker does not work")
        from edgecap import Captioner
        caps = Captioner({str(bundle)!r}).caption([{str(tmp_path / 'a.png')!r}], num_beams=2)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum", "onnx"))
        print(json.dumps({{"text": caps[0].text, "ids": list(caps[0].token_ids), "loaded": loaded}}))
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []

    from edgecap import Captioner

    expected = Captioner(bundle).caption([tmp_path / "a.png"], num_beams=2)[0]
    assert out["ids"] == list(expected.token_ids) and out["text"] == expected.text


def test_cli_export_without_torch_says_what_to_install(tmp_path):
    script = BLOCKER + "from edgecap.cli import main; raise SystemExit(main(['export', 'x', 'y']))"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 2
    from edgecap.extras import install_command

    assert install_command("export") in res.stderr and "Traceback" not in res.stderr
