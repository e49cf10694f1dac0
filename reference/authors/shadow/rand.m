function varargout = rand(varargin)
% Logs every draw of the built-in rand (seed and state calls pass through) so that
% deepbof's tests can replay the same numbers. Part of deepbof's reference driver.
global DEEPBOF_DRAWS
if nargin > 0 && ischar(varargin{1})
  [varargout{1:nargout}] = builtin('rand', varargin{:});
  return
end
r = builtin('rand', varargin{:});
DEEPBOF_DRAWS{end + 1} = struct('kind', 'rand', 'value', r);
varargout{1} = r;
end
