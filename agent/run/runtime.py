"""The long-running agent's boot code, run as `python -c LOADER PROGRAM _runtime FD WRITER ARGV...`.

launch.py execs that (same pid); LOADER reads this file's code (compiled by the start-up
process) from the pipe FD and runs it, so the runtime needs no zipimport, runpy or compiling of
its own (about 1 MB less than starting the pyz again). Then come the settings and an index (a
header with their lengths), and the agent's modules, compiled, in one block, read into one
buffer that is freed once every module is loaded (a buffer that size is its own mapping: its
memory goes back to the system). PROGRAM (the pyz, or -magent) names the agent for procs.looks_like_sshkeep.
"""

import marshal
import os
import sys

ModuleSpec = type(sys.__spec__)  # importlib.machinery's, without importing it


class _Compiled:
    """A meta-path finder for the agent modules compiled by the start-up process."""

    def __init__(self, index, block, package_path, packages):
        self.index, self.block, self.path = index, block, package_path  # name -> (offset, length)
        self.packages = set(packages)  # agent's subpackages among them (core, run, ...)

    def find_spec(self, name, path=None, target=None):
        if name not in self.index:
            return None
        package = name == "agent" or name.count(".") == 1 and name[6:] in self.packages
        spec = ModuleSpec(name, self, is_package=package)
        if package:  # a module not sent (cli, settings, daemon) can still come from the folder itself
            spec.submodule_search_locations = [self.path + ("" if name == "agent" else "/" + name[6:])]
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        start, length = self.index.pop(module.__name__)
        code = marshal.loads(self.block[start:start + length])
        module.__file__ = code.co_filename
        exec(code, module.__dict__)

    def drop_block(self):
        """Every module is in: the code block's memory goes back."""
        self.block.release()
        self.block = None


def boot(pipe, writer):
    """`pipe`: LOADER's buffered file on FD (its read(n) returns n bytes, however the pipe
    delivers them), already past this code."""
    head = pipe.read(16)
    meta = marshal.loads(pipe.read(int(head[:8])))
    finder = _Compiled(meta["index"], memoryview(pipe.read(int(head[8:]))), meta["path"], meta["packages"])
    pipe.close()
    os.waitpid(writer, 0)
    sys.meta_path.insert(0, finder)
    for name in sorted(finder.index):  # "agent" first, each package before its modules
        __import__(name)
    finder.drop_block()
    from agent.run import serve
    return serve.main(meta)


if __name__ == "__main__":
    sys.exit(boot(f, int(sys.argv[4])))  # noqa: F821  (f: LOADER's pipe, in this same namespace)
