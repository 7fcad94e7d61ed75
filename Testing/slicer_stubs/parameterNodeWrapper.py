"""Stub of ``slicer.parameterNodeWrapper``: the decorator leaves the class as written (its annotations
are what the tests check) and the validators only record their arguments."""


def parameterNodeWrapper(classtype):
    classtype._isStubParameterNodeWrapper = True
    return classtype


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum
