"""A plain, non-editable install (no make) runs the design card's papermill command: the kernel spec and the
notebooks are installed by pip, and runs go to the current directory's results/ (issue 19)."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_non_editable_install_runs_papermill_on_an_installed_notebook(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies come from this environment (nothing is downloaded): its site-packages on the new venv's
    # path through a .pth line.  The .pth files inside it are not run, so the checkout's editable mistudy is not
    # importable there: only the wheel installed below is.  pip runs under the new venv's interpreter (its module
    # found through that path), so the new venv is the environment it installs into and this environment's editable
    # install is left alone ("outside environment"); this environment's pip with --prefix would uninstall it.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    build = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--no-index", "--no-warn-script-location", str(ROOT)],
                           capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    # this environment still imports the checkout (the rest of the suite runs in it)
    here = subprocess.run([sys.executable, "-c", "import mistudy; print(mistudy.__file__)"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert here.stdout.strip() == str(ROOT / "mistudy" / "__init__.py"), here.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MISTUDY_", "JUPYTER_", "PYTHONPATH"))}
    env |= {"PATH": f"{venv / 'bin'}:{env['PATH']}", "MISTUDY_PROGRESS": "log", "OMP_NUM_THREADS": "1"}
    where = subprocess.run([str(python), "-c", "import mistudy, mistudy.study as s, jupyter_client.kernelspec as k; "
                            "print(mistudy.__file__); print(s.DEFAULT_NOTEBOOKS_DIR); "
                            "print(k.KernelSpecManager().find_kernel_specs()['mistudy'])"],
                           check=True, capture_output=True, text=True, cwd=work, env=env).stdout.split()
    assert where[0].startswith(str(venv)), where  # the installed package, not the checkout
    notebooks = Path(where[1])
    assert notebooks == venv / "share" / "mistudy" / "notebooks" and (notebooks / "03_rmi.ipynb").is_file()
    assert Path(where[2]) == venv / "share" / "jupyter" / "kernels" / "mistudy"

    out = subprocess.run([str(python), "-m", "papermill", str(notebooks / "03_rmi.ipynb"), "out.ipynb",
                          "-p", "profile", "tiny"], capture_output=True, text=True, cwd=work, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    executed = json.loads((work / "out.ipynb").read_text())
    assert executed["metadata"]["kernelspec"]["name"] == "mistudy"
    # without a source checkout the current directory is the project root: results/ and figures/ appear here
    assert list((work / "results" / "tiny" / "synthetic" / "rmi").glob("*/metrics.json"))
    assert list((work / "figures" / "tiny").glob("synthetic_03_rmi_*"))
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert str(work / "results" / "tiny") in printed  # the notebook says where its run went
